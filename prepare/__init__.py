"""--mode prepare: a training set from folders of real photos and videos (sources.py reads them,
labels.py names who and which emotion)."""
