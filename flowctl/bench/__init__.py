"""The cross-prompt caching benchmark."""
