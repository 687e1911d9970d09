"""Building blocks that methods insert into a model."""
