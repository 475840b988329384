"""Pruning: UNet++ levels measured on labelled cases and the smallest good one chosen;
``prune_after_training`` is the post-training step ``medseg train`` attaches."""
