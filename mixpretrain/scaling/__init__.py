"""mixpretrain.scaling"""
