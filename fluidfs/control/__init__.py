"""The control plane: fluidfs-controller and its logic."""
