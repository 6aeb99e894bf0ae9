"""Test and benchmark support: stand-in models with the real model's interface.

Nothing here is used by the tool itself; the stand-ins are never a default model.
"""
