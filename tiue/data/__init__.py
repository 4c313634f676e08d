"""Data the project generates itself: the shapes world (`tiue.data.shapes`)."""
