"""Analysis: agreement, disease associations, tables, figures and the report."""
