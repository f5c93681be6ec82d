"""Python client of CLaaS (Continual-Learning-as-a-Service): needs requests, numpy and tqdm only."""
from claas_client.client import Client
from claas_client.errors import ClaasError
from claas_client.results import Prediction, Results

__all__ = ["Client", "ClaasError", "Prediction", "Results"]
__version__ = "1.0.0"
