"""Small helpers shared by fluidfs, csi and tools; they depend on nothing in fluidfs but errors."""
