"""Federated learning on Ray actors: clients that keep their rows, FedAvg / FedProx / FedAvgM, secure
aggregation by pairwise masks, and user-level differential privacy."""

from rayline.federated.driver import FederatedOutcome, train_federated

__all__ = ["FederatedOutcome", "train_federated"]
