"""CLaaS: Continual-Learning-as-a-Service."""
