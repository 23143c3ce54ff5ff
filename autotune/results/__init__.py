"""Reading a study back: the best layout, the HTML report and terminal rendering."""
