"""Model factory: registered models, versions, and the architecture zoo."""
