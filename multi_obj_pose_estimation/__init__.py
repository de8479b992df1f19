"""Multi-object pose (the OCCLUSION model): train_multi.py and valid_multi.py (design §4.2, §5.7, §6.3, §7.5, §9.6)."""
