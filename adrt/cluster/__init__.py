"""Many products at once: ``adrt train-many`` on Ray (``pip install 'adrt[cluster]'``).

``adrt.cluster.products`` reads the product list (no Ray, no torch); ``adrt.cluster.train_many``
runs one Ray task per product and writes the results table.
"""
