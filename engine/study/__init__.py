"""The study around a run: SimpleRL-Zoo data splits, saved rollouts, behaviour judges, the aha
moment and the HTML report. Reads run folders and data files; never needs the trainer."""
