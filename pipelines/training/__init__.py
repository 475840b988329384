"""Training: ``train`` runs a configured training (data, split, plan, epochs, model
directory) and then the post-training steps its caller attaches."""
