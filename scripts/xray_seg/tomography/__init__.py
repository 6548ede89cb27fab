"""3D tomography volumes: volume I/O, slab manifests, volume transforms, streaming inference, evaluation, threshold baseline, experiments, benchmark."""
