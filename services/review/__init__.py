"""The learning loop's first half: auto-labels from inspections and the review queue."""
