"""TAG (Paolo et al. 2025): each level is an env for the level above, PPO/MAPPO agents and learned
communication. ``family`` builds the hierarchy from the YAML levels; ``action_trace`` is the Trainer
callback behind the Sec. 5.3 action-correlation figures."""
