"""A node: the actor set and services it runs (`assembly`), blocking services,
and the real driver (uvloop + ZeroMQ) that runs them as one process."""
