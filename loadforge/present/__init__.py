"""What people read: the terminal summary, the HTML report, exports, output files."""
