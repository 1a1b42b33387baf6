"""mixpretrain.train"""
