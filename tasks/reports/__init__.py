"""What people read: the stage reports' contracts, the data-quality page, summaries, number formats."""
