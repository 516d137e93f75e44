"""The engine of ``fluidfs load``: warm a cache through a mount or straight from a source."""
