"""Per-case boundary metrics (Dice, HD95 and NSD in millimetres) of a prediction folder, and the
paired statistics that compare trainers case by case."""
