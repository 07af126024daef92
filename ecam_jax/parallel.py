"""The data-parallel axis: one name, defined once, imported everywhere."""

AXIS = 'data'
