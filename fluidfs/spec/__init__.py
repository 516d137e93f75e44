"""Dataset documents: the model (model.py), the parser (parse.py, fields.py) and Fluid's format (fluid.py)."""
