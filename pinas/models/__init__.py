"""The networks: split-attention blocks, the supernet / standalone backbone and classifier, the supernet-Pi
objective (student, path-restricted EMA teacher, queue), and the params / MACs cost model."""
