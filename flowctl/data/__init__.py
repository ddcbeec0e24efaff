"""Procedural data of the tiny text-to-image world: captioned shape images and an attribute classifier."""
