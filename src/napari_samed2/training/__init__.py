"""Training the demo model and adapting models: data, losses, loops; no Qt, no napari."""
