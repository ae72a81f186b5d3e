"""The rollout layer: canaries, A/B tests, shadows and promotion gates, built on handles."""
