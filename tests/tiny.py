"""The tiny model of the end-to-end tests (32 px, 8 channels): trains in a fraction of a second per iteration."""
TINY_MODEL = ['--image_size', '32', '--g_conv_dim', '8', '--d_conv_dim', '8', '--g_repeat_num', '1',
              '--d_repeat_num', '3', '--batch_size', '4', '--n_critic', '2', '--num_workers', '0']
