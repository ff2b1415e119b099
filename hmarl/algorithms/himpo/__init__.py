"""HiMPo (Marzi et al. 2025): feudal managers with GNN message passing, units learning from their
superior's advantage. ``family`` builds the hierarchy and checks its options."""
