"""HRL-CG (Kreidieh et al. 2020): a goal-conditioned TD3 manager over workers, relative goals and
the connected-gradient term. ``family`` builds the hierarchy and holds the goal manager."""
