"""mixpretrain.samplers"""
