"""Federated learning on Ray actors: clients that keep their rows, FedAvg / FedProx / FedAvgM, secure
aggregation by pairwise masks, and user-level differential privacy."""

from rayline.federated.driver import FederatedOutcome, train_federated
from rayline.federated.partition import client_column, with_client_column

__all__ = ["FederatedOutcome", "client_column", "train_federated", "with_client_column"]
