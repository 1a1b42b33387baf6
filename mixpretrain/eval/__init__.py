"""mixpretrain.eval"""
