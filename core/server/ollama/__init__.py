"""Ollama's API (`/api/*`) over corral's engines: the routes Ollama apps and the `ollama` client use."""
