"""Pieces every bundle uses: input checks and errors, manifests splits, atomic outputs, resume and run folders, handlers, reports, figures."""
