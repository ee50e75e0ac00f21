"""Preference alignment (ECPO): reward models and the RL loop. Not built yet; see the README's roadmap."""
