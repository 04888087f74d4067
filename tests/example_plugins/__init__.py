"""Third-party plugins as an outside author would write them, loaded by dotted path."""
