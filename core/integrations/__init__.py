"""corral on the distributed engines teams already run: Ray Serve (`corral.integrations.ray`)."""
