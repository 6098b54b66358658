"""Pure generation. Importing this package must not import torch: the API imports `contract` and `schema`."""
