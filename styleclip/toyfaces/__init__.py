"""The embedded toyfaces domain: renderer with ground-truth attributes, captions, attribute classifier."""
