"""Small pieces shared by data_prep, training, parallel and cluster (no heavy imports here)."""
