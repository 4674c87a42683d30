"""Adapters that let other libraries use a FlashDecoder (each imports its library only when used)."""
