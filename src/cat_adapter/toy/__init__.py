"""The shapes world: a tiny text-to-image world and models trained on it (``--model toy``, ``--clip toy``)."""
