"""Evaluation: the paper's Prompt/Identity/Knowledge Preservation Scores (Eqs. 4-11) and our additions.

Layers, each usable alone:
  ``metrics``   pure functions over cosines (harmonic mean with clamping, diversity, 95% intervals)
  ``clip``      the CLIP embedder (transformers CLIPModel + the folder's own processor, float32)
  ``manifest``  the CSV/JSONL manifest of generated images that ``score`` reads
  ``generate``  paired generation (y_T / y from the same initial noise, base and adapter)
  ``score``     manifest -> pairs.csv + metrics.json + grid.png (the one scoring path)
  ``evaluate``  generate a manifest for an adapter, then score it
  ``report``    several evaluation folders -> table.md / table.csv / scores.png
"""
