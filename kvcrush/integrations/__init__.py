"""Bridges from this project's engine to other KV-compression toolkits.

`kvcrush.integrations.kvpress`: KVCrush as an NVIDIA kvpress press (`KVCrushPress`) and any of our
policies as a press (`as_press`). Importing it needs the optional `kvpress` package.
"""
