"""mixpretrain.data"""
