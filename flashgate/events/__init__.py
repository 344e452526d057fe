"""Wire types: msgspec Structs for everything that crosses the broker or is signed."""
